"""TFLite Micro: the int8 flatbuffer, its C array and code, and the checks that it fits the board (arena, op resolver, flash)."""

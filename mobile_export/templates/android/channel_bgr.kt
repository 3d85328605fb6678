
    private fun channel(pixel: Int, c: Int): Float = when (c) {
        0 -> pixel and 0xFF
        1 -> (pixel shr 8) and 0xFF
        else -> (pixel shr 16) and 0xFF
    }.toFloat()

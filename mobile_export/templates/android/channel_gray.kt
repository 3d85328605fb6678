
    /** Luma as the build's validation computed it (ITU-R 601-2, as Pillow's "L"). */
    @Suppress("UNUSED_PARAMETER")
    private fun channel(pixel: Int, c: Int): Float {
        val r = (pixel shr 16) and 0xFF
        val g = (pixel shr 8) and 0xFF
        val b = pixel and 0xFF
        return ((r * 19595 + g * 38470 + b * 7471 + 0x8000) shr 16).toFloat()
    }

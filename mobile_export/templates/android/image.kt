
    /**
     * Input 0 from a bitmap: resized to @HEIGHT@x@WIDTH@, @COLOR@, x = (pixel * @PIXEL_SCALE@ - MEAN[c]) / STD[c],
     * written in the model's layout (@LAYOUT@) and quantized when the input is integer.
     */
    fun inputFromBitmap(bitmap: Bitmap): ByteBuffer {
        val tensor = spec.inputs[0]
        val image = resize(if (bitmap.config == Bitmap.Config.HARDWARE) bitmap.copy(Bitmap.Config.ARGB_8888, false) else bitmap)
        val pixels = IntArray(WIDTH * HEIGHT)
        image.getPixels(pixels, 0, WIDTH, 0, 0, WIDTH, HEIGHT)
        val buffer = tensor.allocate()
        for (y in 0 until HEIGHT) {
            for (x in 0 until WIDTH) {
                val pixel = pixels[y * WIDTH + x]
                for (c in 0 until CHANNELS) {
                    val value = (channel(pixel, c) * PIXEL_SCALE - MEAN[c]) / STD[c]
                    val index = if (tensor.nchw) (c * HEIGHT + y) * WIDTH + x else (y * WIDTH + x) * CHANNELS + c
                    tensor.set(buffer, index, value)
                }
            }
        }
        return buffer
    }

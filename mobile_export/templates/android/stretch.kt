
    private fun resize(bitmap: Bitmap): Bitmap =
        if (bitmap.width == WIDTH && bitmap.height == HEIGHT) bitmap else Bitmap.createScaledBitmap(bitmap, WIDTH, HEIGHT, true)

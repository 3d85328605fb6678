
    fun run(bitmap: Bitmap): List<FloatArray> = run(listOf(inputFromBitmap(bitmap)))

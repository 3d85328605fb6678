
    /** Letterbox: scaled to fit, centred, the rest filled with gray @FILL@. */
    private fun resize(bitmap: Bitmap): Bitmap {
        val ratio = minOf(WIDTH.toFloat() / bitmap.width, HEIGHT.toFloat() / bitmap.height)
        val w = Math.round(bitmap.width * ratio).coerceIn(1, WIDTH)
        val h = Math.round(bitmap.height * ratio).coerceIn(1, HEIGHT)
        val out = Bitmap.createBitmap(WIDTH, HEIGHT, Bitmap.Config.ARGB_8888)
        val canvas = android.graphics.Canvas(out)
        canvas.drawColor(android.graphics.Color.rgb(@FILL@, @FILL@, @FILL@))
        val scaled = Bitmap.createScaledBitmap(bitmap, w, h, true)
        canvas.drawBitmap(scaled, ((WIDTH - w) / 2).toFloat(), ((HEIGHT - h) / 2).toFloat(), null)
        return out
    }


enum class DType(val bytes: Int) { FLOAT32(4), FLOAT16(2), INT8(1), UINT8(1), INT32(4), INT64(8) }

/** One tensor as the interpreter sees it; integer tensors hold real = (q - zeroPoint) * scale. */
class TensorSpec(
    val shape: IntArray,
    val dtype: DType,
    val scale: Float = 0f,
    val zeroPoint: Int = 0,
    val nchw: Boolean = false,
) {
    val elements: Int = shape.fold(1) { n, d -> n * d }
    val byteSize: Int = elements * dtype.bytes

    fun allocate(): ByteBuffer = ByteBuffer.allocateDirect(byteSize).order(ByteOrder.nativeOrder())

    /** Writes the real value at element [index], quantized when the tensor is integer. */
    fun set(buffer: ByteBuffer, index: Int, value: Float) {
        when (dtype) {
            DType.FLOAT32 -> buffer.putFloat(index * 4, value)
            DType.FLOAT16 -> buffer.putShort(index * 2, Half.toHalf(value))
            DType.INT8 -> buffer.put(index, quantize(value, -128, 127).toByte())
            DType.UINT8 -> buffer.put(index, quantize(value, 0, 255).toByte())
            DType.INT32 -> buffer.putInt(index * 4, quantize(value, Int.MIN_VALUE, Int.MAX_VALUE))
            DType.INT64 -> buffer.putLong(index * 8, value.toLong())
        }
    }

    /** Writes an integer as it is (token ids, class ids): no scale, no zero point. */
    fun setRaw(buffer: ByteBuffer, index: Int, value: Int) {
        when (dtype) {
            DType.FLOAT32 -> buffer.putFloat(index * 4, value.toFloat())
            DType.FLOAT16 -> buffer.putShort(index * 2, Half.toHalf(value.toFloat()))
            DType.INT8, DType.UINT8 -> buffer.put(index, value.toByte())
            DType.INT32 -> buffer.putInt(index * 4, value)
            DType.INT64 -> buffer.putLong(index * 8, value.toLong())
        }
    }

    /** The real value of element [index], dequantized when the tensor is integer. */
    fun get(buffer: ByteBuffer, index: Int): Float = when (dtype) {
        DType.FLOAT32 -> buffer.getFloat(index * 4)
        DType.FLOAT16 -> Half.toFloat(buffer.getShort(index * 2))
        DType.INT8 -> dequantize(buffer.get(index).toInt())
        DType.UINT8 -> dequantize(buffer.get(index).toInt() and 0xFF)
        DType.INT32 -> dequantize(buffer.getInt(index * 4))
        DType.INT64 -> buffer.getLong(index * 8).toFloat()
    }

    private fun quantize(value: Float, min: Int, max: Int): Int {
        val q = if (scale == 0f) Math.round(value) else Math.round(value / scale) + zeroPoint
        return q.coerceIn(min, max)
    }

    private fun dequantize(q: Int): Float = if (scale == 0f) q.toFloat() else (q - zeroPoint) * scale
}

class ModelSpec(val asset: String, val inputs: List<TensorSpec>, val outputs: List<TensorSpec>)


    /** Input [index] from real values in the tensor's own element order, quantized when it is integer. */
    fun inputFromFloats(values: FloatArray, index: Int = 0): ByteBuffer {
        val tensor = spec.inputs[index]
        require(values.size == tensor.elements) { "input $index takes ${tensor.elements} values" }
        val buffer = tensor.allocate()
        values.forEachIndexed { i, value -> tensor.set(buffer, i, value) }
        return buffer
    }

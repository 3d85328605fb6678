
    /** Input 0 from token ids, cut or padded with [padId] to the model's length. */
    fun inputFromTokens(ids: IntArray, padId: Int = 0): ByteBuffer {
        val tensor = spec.inputs[0]
        val buffer = tensor.allocate()
        for (i in 0 until tensor.elements) tensor.setRaw(buffer, i, if (i < ids.size) ids[i] else padId)
        return buffer
    }

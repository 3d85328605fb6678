
    private fun checkShapes() {
        spec.inputs.forEachIndexed { i, tensor ->
            check(interpreter.getInputTensor(i).shape().contentEquals(tensor.shape)) { "input $i of ${spec.asset} changed" }
        }
        spec.outputs.forEachIndexed { i, tensor ->
            check(interpreter.getOutputTensor(i).shape().contentEquals(tensor.shape)) { "output $i of ${spec.asset} changed" }
        }
    }

    /** Runs on filled input buffers (from the input* helpers) and returns every output as real values. */
    fun run(inputs: List<ByteBuffer>): List<FloatArray> {
        require(inputs.size == spec.inputs.size) { "${spec.asset} takes ${spec.inputs.size} inputs" }
        inputs.forEach { it.rewind() }
        val outputs = spec.outputs.map { it.allocate() }
        val outputMap: Map<Int, Any> = outputs.withIndex().associate { (i, buffer) -> i to buffer }
        interpreter.runForMultipleInputsOutputs(inputs.toTypedArray<Any>(), outputMap)
        return spec.outputs.mapIndexed { i, tensor -> FloatArray(tensor.elements) { tensor.get(outputs[i], it) } }
    }

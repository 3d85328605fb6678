
/// Runs @CLASS@ on one input of @COUNT@ float values in its own element order ([@SHAPE@]).
func run@CLASS@(_ values: [Float], computeUnits: MLComputeUnits = .@UNITS@) throws -> MLMultiArray {
    let configuration = MLModelConfiguration()
    configuration.computeUnits = computeUnits
    let model = try @CLASS@(configuration: configuration)
    let input = try MLMultiArray(shape: [@SHAPE@], dataType: .float32)
    precondition(values.count == input.count, "@INPUT@ takes @COUNT@ values")
    for (index, value) in values.enumerated() { input[index] = NSNumber(value: value) }
    return try model.prediction(@INPUT@: input).@OUTPUT@
}

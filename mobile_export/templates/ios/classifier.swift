
/// Classifies upright images (`CIImage(cvPixelBuffer:).oriented(...)`) with @CLASS@ through Vision.
final class @CLASS@Classifier {
    static let inputSize = CGSize(width: @WIDTH@, height: @HEIGHT@)
    private let request: VNCoreMLRequest
    private let context = CIContext(options: [.workingColorSpace: NSNull()])  // pixel values as they are

    init(computeUnits: MLComputeUnits = .@UNITS@) throws {
        let configuration = MLModelConfiguration()
        configuration.computeUnits = computeUnits
        let model = try VNCoreMLModel(for: @CLASS@(configuration: configuration).model)
        request = VNCoreMLRequest(model: model)
        request.imageCropAndScaleOption = .scaleFill  // the buffer already has the model's size
    }

    /// The `top` best labels with their probabilities (the package's outputs are probabilities).
    func classify(_ image: CIImage, top: Int = 3) throws -> [(label: String, confidence: Float)] {
        let (pixels, _, _) = try prepare(image)
        try VNImageRequestHandler(cvPixelBuffer: pixels, options: [:]).perform([request])
        let observations = (request.results as? [VNClassificationObservation]) ?? []
        return observations.sorted { $0.confidence > $1.confidence }.prefix(top).map { ($0.identifier, $0.confidence) }
    }
@PREPARE@
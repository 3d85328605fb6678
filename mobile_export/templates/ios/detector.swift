
/// One detected object, in the pixels of the image given to `detect` (origin top left).
struct @CLASS@Detection {
    let label: String
    let confidence: Float
    let box: CGRect
}

/// Detects objects in upright images (`CIImage(cvPixelBuffer:).oriented(...)`) with @CLASS@ through Vision:
/// the package's NMS stage keeps the boxes, and their coordinates are mapped back to the image.
final class @CLASS@Detector {
    static let inputSize = CGSize(width: @WIDTH@, height: @HEIGHT@)
    private let request: VNCoreMLRequest
    private let context = CIContext(options: [.workingColorSpace: NSNull()])  // pixel values as they are

    init(confidenceThreshold: Double = @CONF@, iouThreshold: Double = @IOU@, computeUnits: MLComputeUnits = .@UNITS@) throws {
        let configuration = MLModelConfiguration()
        configuration.computeUnits = computeUnits
        let model = try VNCoreMLModel(for: @CLASS@(configuration: configuration).model)
        model.inputImageFeatureName = "@INPUT@"
        model.featureProvider = @CLASS@Thresholds(iou: iouThreshold, confidence: confidenceThreshold)
        request = VNCoreMLRequest(model: model)
        request.imageCropAndScaleOption = .scaleFill  // the buffer already has the model's size
    }

    func detect(_ image: CIImage) throws -> [@CLASS@Detection] {
        let (pixels, ratio, pad) = try prepare(image)
        try VNImageRequestHandler(cvPixelBuffer: pixels, options: [:]).perform([request])
        let observations = (request.results as? [VNRecognizedObjectObservation]) ?? []
        return observations.map { observation in
            // boundingBox is normalized to the model's input, origin bottom left
            let box = observation.boundingBox
            let rect = CGRect(
                x: (box.minX * Self.inputSize.width - pad.x) / ratio,
                y: ((1 - box.maxY) * Self.inputSize.height - pad.y) / ratio,
                width: box.width * Self.inputSize.width / ratio,
                height: box.height * Self.inputSize.height / ratio
            )
            // The score is the observation's confidence: each row of the package's confidence output holds only
            // its best class's score, so labels[0].confidence (that label's share of the row) is always 1.
            return @CLASS@Detection(label: observation.labels.first?.identifier ?? "", confidence: observation.confidence, box: rect)
        }
    }
@PREPARE@
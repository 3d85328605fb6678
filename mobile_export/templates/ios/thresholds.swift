
/// The NMS stage's optional inputs, which Vision takes from here.
private final class @CLASS@Thresholds: NSObject, MLFeatureProvider {
    let iou: Double
    let confidence: Double

    init(iou: Double, confidence: Double) {
        self.iou = iou
        self.confidence = confidence
    }

    var featureNames: Set<String> { ["iouThreshold", "confidenceThreshold"] }

    func featureValue(for featureName: String) -> MLFeatureValue? {
        switch featureName {
        case "iouThreshold": return MLFeatureValue(double: iou)
        case "confidenceThreshold": return MLFeatureValue(double: confidence)
        default: return nil
        }
    }
}

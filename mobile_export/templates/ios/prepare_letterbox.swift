
    /// The frame letterboxed to @WIDTH@x@HEIGHT@ as the model was trained and validated: scaled to fit, centred,
    /// the rest gray @FILL@. Returns the buffer, the scale and the padding (top-left origin) to map boxes back.
    private func prepare(_ image: CIImage) throws -> (CVPixelBuffer, CGFloat, CGPoint) {
        let size = image.extent.size
        let ratio = min(Self.inputSize.width / size.width, Self.inputSize.height / size.height)
        let pad = CGPoint(
            x: ((Self.inputSize.width - (size.width * ratio).rounded()) / 2 - 0.1).rounded(),
            y: ((Self.inputSize.height - (size.height * ratio).rounded()) / 2 - 0.1).rounded()
        )
        let placed = image
            .transformed(by: CGAffineTransform(translationX: -image.extent.minX, y: -image.extent.minY))
            .transformed(by: CGAffineTransform(scaleX: ratio, y: ratio))
            // Core Image's origin is bottom left: the top padding is pad.y
            .transformed(by: CGAffineTransform(translationX: pad.x, y: Self.inputSize.height - pad.y - size.height * ratio))
        let gray = CIImage(color: CIColor(red: @FILL@ / 255, green: @FILL@ / 255, blue: @FILL@ / 255))
        return (try render(placed.composited(over: gray)), ratio, pad)
    }

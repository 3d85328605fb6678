
    /// The frame stretched to @WIDTH@x@HEIGHT@, as the model was validated; Core ML converts it to @COLOR@ itself.
    private func prepare(_ image: CIImage) throws -> (CVPixelBuffer, CGFloat, CGPoint) {
        let size = image.extent.size
        let stretched = image
            .transformed(by: CGAffineTransform(translationX: -image.extent.minX, y: -image.extent.minY))
            .transformed(by: CGAffineTransform(scaleX: Self.inputSize.width / size.width, y: Self.inputSize.height / size.height))
        return (try render(stretched), 1, .zero)
    }

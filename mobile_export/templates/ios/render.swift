
    private func render(_ image: CIImage) throws -> CVPixelBuffer {
        var buffer: CVPixelBuffer?
        let status = CVPixelBufferCreate(
            kCFAllocatorDefault, Int(Self.inputSize.width), Int(Self.inputSize.height), kCVPixelFormatType_32BGRA, nil, &buffer
        )
        guard status == kCVReturnSuccess, let pixels = buffer else { throw CocoaError(.coderInvalidValue) }
        context.render(image.cropped(to: CGRect(origin: .zero, size: Self.inputSize)), to: pixels)
        return pixels
    }

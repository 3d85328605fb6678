
/**
 * Runs @CPU_ASSET@ with the LiteRT Interpreter (XNNPACK on the CPU), or with [useGpu] @GPU_ASSET@
 * on the GPU delegate where the device supports it (else the CPU model). Not thread-safe: one per thread.
 */
class ModelRunner(context: Context, useGpu: Boolean = false, threads: Int = THREADS) : AutoCloseable {
    val spec: ModelSpec
    private var gpuDelegate: GpuDelegate? = null
    private val interpreter: Interpreter

    init {
        val options = Interpreter.Options().setNumThreads(threads)
        var chosen = CPU_MODEL
        if (useGpu) {
            CompatibilityList().use { compatibility ->
                if (compatibility.isDelegateSupportedOnThisDevice) {
                    val delegate = GpuDelegate(compatibility.bestOptionsForThisDevice)
                    gpuDelegate = delegate
                    options.addDelegate(delegate)
                    chosen = GPU_MODEL
                }
            }
        }
        spec = chosen
        interpreter = Interpreter(loadModel(context, spec.asset), options)
        checkShapes()
    }

    val usesGpu: Boolean get() = gpuDelegate != null

    override fun close() {
        interpreter.close()
        gpuDelegate?.close()
    }

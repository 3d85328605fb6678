
/** Runs @CPU_ASSET@ with the LiteRT Interpreter (XNNPACK on the CPU). Not thread-safe: one per thread. */
class ModelRunner(context: Context, threads: Int = THREADS) : AutoCloseable {
    val spec: ModelSpec = CPU_MODEL
    private val interpreter = Interpreter(loadModel(context, spec.asset), Interpreter.Options().setNumThreads(threads))

    init {
        checkShapes()
    }

    override fun close() {
        interpreter.close()
    }

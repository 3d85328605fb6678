
    /** The [top] best labels with their scores as the model outputs them (logits unless it ends in softmax). */
    fun classify(bitmap: Bitmap, top: Int = 3): List<Pair<String, Float>> {
        val scores = run(bitmap)[0]
        return scores.indices.sortedByDescending { scores[it] }.take(top).map { labels.getOrElse(it) { "$it" } to scores[it] }
    }

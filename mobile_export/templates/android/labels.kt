
    val labels: List<String> =
        context.assets.open(LABELS_ASSET).bufferedReader().use { reader -> reader.readLines().filter { it.isNotBlank() } }

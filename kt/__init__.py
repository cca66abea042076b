"""Knowledge-transfer pipeline (installed as ``caffekt.kt``)."""

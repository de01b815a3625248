"""Demixer's desktop app (PySide6): queue, track view, playback mixer, export, library.

Qt-free parts (`track`, `peaks`, `mixer`, `library`) hold the models and the audio path; the
widgets and Qt workers wrap them. `app.main.run_app` starts the window (`demixer [FILE...]`).
"""

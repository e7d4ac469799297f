"""LLaMo demo (Gradio, Spaces entry point): `python app.py [--model PATH_OR_HUB_ID]`. The app is `llamo/demo.py`."""

from llamo.demo import main


if __name__ == "__main__":
    main()

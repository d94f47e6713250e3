"""The kvcap web demo, as a Hugging Face Space runs it: `python app.py [--model DIR_OR_HUB_ID] [--port 7860]`.

Upload a video: the page shows its 8 sampled frames and its Korean caption, and METEOR when a reference caption is
pasted. The model is `--model`, else `$KVCAP_MODEL`, else the demo's `outputs/demo/final` (`python train_hf.py
demo` makes it); it runs on CPU.
"""

from __future__ import annotations

import argparse
import os
import sys

# Before gradio is imported: a Space (or this machine) may have no network, and analytics would try it.
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

from kvcap.space import build_app, launch_options


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=os.environ.get("KVCAP_MODEL", "outputs/demo/final"))
    parser.add_argument("--host", default="127.0.0.1", help="0.0.0.0 to serve other machines (a Space does)")
    parser.add_argument("--port", type=int, default=int(os.environ.get("PORT", "7860")))
    parser.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
    parser.add_argument("--trust_remote_code", action="store_true", help="run the model folder's own code")
    args = parser.parse_args(argv)
    app = build_app(args.model, args.device, trust_remote_code=args.trust_remote_code)
    app.launch(server_name=args.host, server_port=args.port, **launch_options())
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""`tfhash serve`: the embedded server from the command line, until SIGINT or SIGTERM."""

import logging
import signal
import threading


def add_serve_command(subparsers):
    """Registers `tfhash serve` on the `tfhash` argparse subparsers; returns its parser."""
    p = subparsers.add_parser(
        "serve",
        help="serve exported models over TF Serving's gRPC API (embedded server, no TF Serving needed)",
        description="Serves BASE_DIR/<name>/<version>/ SavedModels (tfhash export) over TF Serving's "
        "gRPC API until SIGINT or SIGTERM. For production, run TF Serving: see serving/README.md.",
    )
    p.add_argument("--base-dir", required=True, help="folder of model folders (tfhash export --base-dir)")
    p.add_argument("--model-name", help="serve only BASE_DIR/NAME (default: every model folder)")
    p.add_argument("--port", type=int, default=8500, help="gRPC port, 0 for a free one (default: %(default)s)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind; 0.0.0.0 for all (default: %(default)s)")
    p.add_argument("--poll-seconds", type=float, default=2.0, help="poll for new versions, 0: never (default: 2)")
    p.add_argument("--num-versions", type=int, default=1, help="highest versions kept loaded per model (default: 1)")
    p.add_argument("--max-message-mb", type=float, default=64, help="largest request or reply (default: %(default)s)")
    p.add_argument(
        "--max-batch",
        type=int,
        default=1024,  # server.DEFAULT_MAX_BATCH, not imported here: the server module loads TensorFlow
        help="most rows (images) per Predict request; more get RESOURCE_EXHAUSTED. Memory stays bounded "
        "either way: the model runs on at most 256 rows at a time (default: %(default)s)",
    )
    p.set_defaults(run=serve_command)
    return p


def serve_command(args):
    """Runs the server for parsed `tfhash serve` arguments until SIGINT or SIGTERM."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    if args.max_message_mb <= 0:
        raise ValueError(f"--max-message-mb must be positive. Received: {args.max_message_mb}")
    if args.max_batch < 1:
        raise ValueError(f"--max-batch must be a positive number of rows. Received: {args.max_batch}")
    from tfhash.serving.server import ModelServer  # here: it loads TensorFlow

    server = ModelServer(
        args.base_dir,
        model_name=args.model_name,
        port=args.port,
        host=args.host,
        max_message_bytes=int(args.max_message_mb * 2**20),
        max_batch=args.max_batch,
        poll_seconds=args.poll_seconds,
        num_versions=args.num_versions,
    )
    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        server.start()
        print(f"tfhash serve: gRPC (TF Serving PredictionService, ModelService) on {server.address}", flush=True)
        served = server.served_versions()
        for name, versions in served.items():
            print(f"  model {name}: version {', '.join(map(str, versions))}", flush=True)
        if not served:
            print(f"  no model versions yet under {args.base_dir}; polling for them", flush=True)
        # A timed wait, so the signal handler's set() is seen promptly.
        while not stop.wait(0.5):
            pass
        print("tfhash serve: stopping", flush=True)
    finally:
        server.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    print("tfhash serve: stopped", flush=True)

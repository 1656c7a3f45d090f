"""Relative Preference Optimization (arXiv 2402.10958): data, models, losses, training, evaluation."""

__version__ = "0.1.0"


def _hand_over_to_fork_server() -> None:
    """`python -m rpo.<stage>` with RPO_FORK_SERVER=1 in the environment (config key fork_server; the
    rules set it) runs the stage in a child of rpo.launch's fork server instead, before this process
    imports torch. Here, in the package's import, because that runs first; rules and their shell
    commands stay as they are, so toggling the switch reruns nothing."""
    import os
    import sys

    argv = getattr(sys, "orig_argv", [])
    if os.environ.get("RPO_FORK_SERVER") != "1" or len(argv) < 3 or argv[1] != "-m":
        return
    if "LOCAL_RANK" in os.environ or "TORCHELASTIC_RUN_ID" in os.environ:  # a torchrun rank: start as usual
        return
    from rpo.launch import STAGES, ServerUnavailable, run

    module = argv[2]
    if module in STAGES and not os.environ.get("RPO_FORK_CHILD"):
        try:
            code = run(module, argv[3:])
        except ServerUnavailable as exc:  # not handed over: start the stage here, as without the switch
            print(f"rpo.launch: {exc}; running {module} in this process", file=sys.stderr)
            return
        sys.exit(code)


_hand_over_to_fork_server()

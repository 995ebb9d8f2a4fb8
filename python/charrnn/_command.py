"""The `charrnn` command the wheel installs: the same code as the binary's `main`."""

import signal
import sys


def main() -> None:
    from ._native import main as run

    # As in the binary: Ctrl-C ends the process unless the command handles it itself (train
    # saves first); a closed pipe is an error the command sees, not a signal.
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    sys.exit(run(sys.argv))


if __name__ == "__main__":
    main()

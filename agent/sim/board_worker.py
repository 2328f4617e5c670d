"""`python -m agent.sim.board_worker FD`: a worker process of the site simulator, stepping a
share of the boards (agent/sim/board_farm.py), on the socket it was handed as descriptor FD."""

import sys
from multiprocessing.connection import Connection

from agent.sim.board_farm import serve_worker


def main() -> None:
    serve_worker(Connection(int(sys.argv[1])))


if __name__ == "__main__":
    main()

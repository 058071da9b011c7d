"""Rollout sidecar: `python rollout_server.py --model DIR [--port P] [engine flags]`.

Runs in the rollout environment (.venv/rollout); see docs/rollout.md.
"""

if __name__ == "__main__":  # vLLM may spawn workers that re-import this file
    from rollout.server import main

    main()

"""Airflow's serve-logs app, bound to 127.0.0.1 (``airflow serve-logs`` binds every interface)."""

import sys

import uvicorn

if __name__ == "__main__":
    uvicorn.run(
        "airflow.utils.serve_logs.log_server:get_app",
        host="127.0.0.1",
        port=int(sys.argv[1]),
        log_level="warning",
        log_config=None,
        access_log=False,
    )

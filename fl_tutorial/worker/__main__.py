"""python -m fl_tutorial.worker --id client1 --port 8777 --data-dir ./data   (--help: every option)"""
from fl_tutorial.remote.worker import run

run()

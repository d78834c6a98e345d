from tskd_lite.cli import entry

entry()

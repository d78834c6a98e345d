from tskd_lite.cli import main

main()

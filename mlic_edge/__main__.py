from mlic_edge.cli.app import main

main()

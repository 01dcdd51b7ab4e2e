from replidb.cli.main import main

main()

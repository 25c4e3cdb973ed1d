from circuits.cli.main import main

main()

from circuits.cli.entry import run

run()

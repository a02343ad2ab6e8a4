from runner.service.cli import main

main()

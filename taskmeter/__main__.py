from taskmeter.cli import main

main()

from hegl_cli.cli.app import main

main()

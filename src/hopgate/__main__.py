from hopgate.cli import main

main()

from asgiws.cli import main

main()

from vncsess.cli import main

main()

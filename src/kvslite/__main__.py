from kvslite.cli import main

main()

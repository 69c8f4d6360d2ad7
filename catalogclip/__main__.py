from catalogclip.cli import main

main()

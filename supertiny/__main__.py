from supertiny.cli import main

main()

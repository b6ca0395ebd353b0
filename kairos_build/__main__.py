from kairos_build.cli import main

main()

from kairos_build.cli.app import main

main()

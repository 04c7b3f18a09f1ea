from arctic_embed.cli import main

main()

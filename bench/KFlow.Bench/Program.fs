// The benchmark runner: `KFlow.Bench [--only NAME]` runs the named benchmark (or all), prints its
// table and merges its figures into artifacts/bench-results.json.
module KFlow.Bench.Program

/// The benchmarks by name.
let benchmarks = [ "ledger", LedgerBench.run; "pg-sink", PgSinkBench.run ]

[<EntryPoint>]
let main argv =
    let selected =
        match List.ofArray argv with
        | [] -> Ok benchmarks
        | [ "--only"; name ] ->
            match benchmarks |> List.filter (fun (n, _) -> n = name) with
            | [] -> Error(sprintf "Unknown benchmark '%s'." name)
            | found -> Ok found
        | _ -> Error "Unrecognised arguments."

    match selected with
    | Error message ->
        let names = benchmarks |> List.map fst |> String.concat ", "
        eprintfn "%s\nusage: KFlow.Bench [--only NAME]   (benchmarks: %s)" message names
        2
    | Ok selected ->
        for name, run in selected do
            printfn "== %s" name
            let file = Results.merge (run ())
            printfn "\nFigures merged into %s" file

        0

// Reading doc snippets: the fenced F# blocks of a markdown page (`<!-- snippet: name -->` above a
// ```fsharp fence) and the marked regions of a source file (`//[name]` … `//[/name]`), dedented.
module KFlow.Kafka.Tests.DocSnippets

open System
open System.IO
open Expecto

/// The fenced snippets of a markdown page, in order, as (name, body).
let snippetsOf (markdown: string) =
    let lines = markdown.Replace("\r\n", "\n").Split('\n')

    [
        for i in 0 .. lines.Length - 2 do
            if lines[i].Trim().StartsWith "<!-- snippet:" && lines[i + 1].Trim() = "```fsharp" then
                let name = lines[i].Trim().Substring(13).Replace("-->", "").Trim()
                let body = lines |> Seq.skip (i + 2) |> Seq.takeWhile (fun l -> l.Trim() <> "```")
                name, String.Join("\n", body)
    ]

/// The marked regions of a source file, dedented, as (name, body).
let regionsOf (source: string) =
    let lines = source.Replace("\r\n", "\n").Split('\n')

    [
        for i in 0 .. lines.Length - 1 do
            let line = lines[i].Trim()

            if line.StartsWith "//[" && not (line.StartsWith "//[/") && line.EndsWith "]" then
                let name = line.Substring(3, line.Length - 4)

                let body =
                    lines
                    |> Seq.skip (i + 1)
                    |> Seq.takeWhile (fun l -> l.Trim() <> $"//[/{name}]")
                    |> List.ofSeq

                let indent =
                    match body |> List.filter (fun l -> l.Trim() <> "") with
                    | [] -> 0
                    | xs -> xs |> List.map (fun l -> l.Length - l.TrimStart().Length) |> List.min

                name,
                String.Join(
                    "\n",
                    body
                    |> List.map (fun l -> if l.Length >= indent then l.Substring indent else l.Trim())
                )
    ]

/// The repository's root (where KFlow.Functional.sln is), found above the test binaries.
let repoRoot () =
    let rec up (dir: DirectoryInfo | null) =
        match dir with
        | null -> failtest "KFlow.Functional.sln not found above the test binaries"
        | d when File.Exists(Path.Combine(d.FullName, "KFlow.Functional.sln")) -> d.FullName
        | d -> up d.Parent

    up (DirectoryInfo AppContext.BaseDirectory)

/// Checks that a page (path under docs/) shows exactly the marked regions of a test source file
/// (path under tests/KFlow.Kafka.Tests/), each unchanged.
let expectPageShowsRegions (page: string) (sourceFile: string) =
    let root = repoRoot ()
    let shown = snippetsOf (File.ReadAllText(Path.Combine(root, "docs", page)))

    let marked =
        regionsOf (File.ReadAllText(Path.Combine(root, "tests", "KFlow.Kafka.Tests", sourceFile)))
        |> Map.ofList

    Expect.equal
        (shown |> List.map fst |> Set.ofList)
        (marked |> Map.keys |> Set.ofSeq)
        "every region is shown"

    for name, body in shown do
        Expect.equal body marked[name] $"snippet {name} matches its region"

// Where benchmark figures go: artifacts/bench-results.json at the repository root, one flat JSON
// object that every benchmark merges its keys into (keys written by other benchmarks are kept).
module KFlow.Bench.Results

open System
open System.IO
open System.Text.Json
open System.Text.Json.Nodes

/// The repository root: the first directory above the program (or the working directory) that
/// holds KFlow.Functional.sln.
let repoRoot () =
    let rec up (dir: DirectoryInfo | null) =
        match dir with
        | null -> None
        | dir when File.Exists(Path.Combine(dir.FullName, "KFlow.Functional.sln")) -> Some dir.FullName
        | dir -> up dir.Parent

    match up (DirectoryInfo AppContext.BaseDirectory) with
    | Some root -> root
    | None ->
        match up (DirectoryInfo Environment.CurrentDirectory) with
        | Some root -> root
        | None ->
            failwith "No directory above the benchmark or the working directory holds KFlow.Functional.sln."

/// The results file.
let path () =
    Path.Combine(repoRoot (), "artifacts", "bench-results.json")

/// Sets the given keys in the results file, creating it if needed and keeping every other key.
let merge (figures: (string * float) list) =
    let file = path ()
    Directory.CreateDirectory(Path.GetDirectoryName file |> nonNull) |> ignore

    let json =
        if File.Exists file then
            match JsonNode.Parse(File.ReadAllText file) with
            | :? JsonObject as o -> o
            | _ -> JsonObject()
        else
            JsonObject()

    for key, value in figures do
        json[key] <- JsonValue.Create(Math.Round(value, 3))

    File.WriteAllText(file, json.ToJsonString(JsonSerializerOptions(WriteIndented = true)) + "\n")
    file

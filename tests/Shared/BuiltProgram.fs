// Where another project of the solution put its built program, so a test can run it as a separate
// process. Linked into each test project that starts one (the dev cluster, the crash child).
module KFlow.Tests.BuiltProgram

open System
open System.Diagnostics
open System.IO
open KFlow.Testing

/// The dll of the project in `projectDir` (relative to the repository root), built with this test
/// assembly's configuration and target framework (tests/X/bin/<Configuration>/<tfm>). The test
/// project references that project for build order only.
let dll (projectDir: string) (assemblyName: string) =
    let baseDir = AppContext.BaseDirectory.TrimEnd Path.DirectorySeparatorChar
    let tfm = string (Path.GetFileName baseDir)

    let configuration =
        match Path.GetDirectoryName baseDir with
        | null -> failwith $"{baseDir} is not under bin/<Configuration>/<tfm>."
        | parent -> string (Path.GetFileName parent)

    let dll =
        Path.Combine(DocSnippets.repoRoot (), projectDir, "bin", configuration, tfm, assemblyName + ".dll")

    if not (File.Exists dll) then
        failwith $"{dll} is missing: build the solution first (dotnet fsi build.fsx build)."

    dll

/// Starts `dotnet dll args…` with stdout and stderr redirected (the caller reads them).
let start (dll: string) (args: string list) =
    let psi =
        ProcessStartInfo(
            "dotnet",
            UseShellExecute = false,
            RedirectStandardOutput = true,
            RedirectStandardError = true
        )

    psi.ArgumentList.Add dll
    args |> List.iter psi.ArgumentList.Add

    match Process.Start psi with
    | null -> failwith "dotnet did not start."
    | p -> p
